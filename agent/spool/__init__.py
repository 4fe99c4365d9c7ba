"""The on-site spool: identifiable instances as received, and the state of every study."""
