"""kpcap_agent."""
