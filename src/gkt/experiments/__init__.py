"""Experiments: the grid runner with its SQLite results store and local/Ray backends, and what runs on it
(transfer studies, multi-teacher tables, the KDEP benchmark, adapt/crossdomain studies, zoo builds)."""
