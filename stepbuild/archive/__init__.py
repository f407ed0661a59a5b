"""Images in and out of archives: export, write, load, read."""
