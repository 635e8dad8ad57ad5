"""Model families behind one interface: each subpackage is one family the loop can run."""
