"""The HTTP surface: routes, dependencies, schemas, error handlers and middleware."""
