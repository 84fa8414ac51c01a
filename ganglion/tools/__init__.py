"""Tools the model may call: typed async functions, their schema derived from the signature."""
