"""Thin command layer: parse options → config dataclass → one library call → report on stderr."""
