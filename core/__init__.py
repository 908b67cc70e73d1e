"""Plain Python that every app may import and that imports no app: errors, expressions, deadlines."""
