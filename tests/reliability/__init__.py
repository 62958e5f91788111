"""Crash-safety harness: SIGKILL boxloop commands at random moments and check nothing is lost."""
