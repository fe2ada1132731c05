"""Python tools for the example specs: plain functions, called with keyword arguments."""
