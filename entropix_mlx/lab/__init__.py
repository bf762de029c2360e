"""Experiments over finished decodes: compare, replay, calibrate, evaluate. They return data; `ui/`
renders it."""
