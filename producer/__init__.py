"""Taking jobs in: parsing, validation, the rules pass and pipelined enqueue."""
