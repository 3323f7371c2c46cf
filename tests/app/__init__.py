"""A small, realistic application for the adapter tests: customers and their orders, plus an audit log that is
not part of the migration. Its write code is plain SQLAlchemy ORM; the tests install dualwrite on its
sessionmaker and never change a line of it."""
