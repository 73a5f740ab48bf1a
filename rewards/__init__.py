"""User reward plug-ins for PolishPPO (see README.md). A package so `rewards.<file>:<name>` imports from the repo root."""
