"""One module per backend that runs an exported model; session.open_session imports the chosen one."""
