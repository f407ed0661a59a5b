"""Where a build's inputs come from: the context, ignore files, URLs, git."""
