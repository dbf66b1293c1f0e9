"""Trainers: each update is one jitted pure function of a named state, vmappable over seeds."""
