"""kpcap_operator."""
