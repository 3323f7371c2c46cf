"""Log-based change data capture (strategy ``cdc``): PostgreSQL logical decoding, MariaDB/MySQL binlog."""
