"""EtherSync: passphrase-derived spaces where messages and files spread by gossip."""
