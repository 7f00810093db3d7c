"""Infrastructure: the embedded broker (Tansu), ClickHouse (server or chDB) and its DDL."""
