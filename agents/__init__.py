"""Faust agents: thin wiring of pipeline pieces to Kafka topics and tables."""
