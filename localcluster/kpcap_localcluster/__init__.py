"""kpcap_localcluster."""
