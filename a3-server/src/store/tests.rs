//! Store tests: round trips, dedup, commit order, crashes, corruption, GC, full disk.
