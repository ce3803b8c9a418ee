"""Small helpers: paths, seeding, memory."""
