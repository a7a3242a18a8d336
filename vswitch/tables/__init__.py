"""Pure data structures of the dataplane. Time is always passed in; nothing here reads a clock."""
