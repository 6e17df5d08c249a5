"""Benchmarks of autogluon-tfm on real offline datasets (not part of the installed package)."""
