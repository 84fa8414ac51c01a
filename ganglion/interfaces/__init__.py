"""Interfaces translate at the edge: web tabs and Matrix rooms to Inbound, Outbound back."""
