"""Exercises of lesson 05: graders, reference solutions and mutants."""
