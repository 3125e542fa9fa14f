"""kpcap."""
