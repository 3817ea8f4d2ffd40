"""The SQL ledger: models, engine, migrations and the record state machine."""
