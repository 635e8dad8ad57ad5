"""Reading finished run folders: tables, plots and the report of `collapse compare` / `collapse show`."""
