"""Exercises of lesson 03: graders, reference solutions and mutants."""
