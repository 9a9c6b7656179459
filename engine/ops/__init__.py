"""Operations, one module per verb. Each takes an open Repository and reports Events."""
