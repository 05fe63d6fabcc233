"""Benchmarks of Kianax through the real server, with their recorded results (README.md)."""
