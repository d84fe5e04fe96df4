"""``fedmmrec bench``: our overheads side by side with their floors (the no-op ClientApp, peak
memory of the process tree)."""
