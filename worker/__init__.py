"""Doing the work: tier and classifier workers, provider adapters, outcome stream, ClickHouse sink."""
