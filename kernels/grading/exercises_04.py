"""Exercises of lesson 04: graders, reference solutions and mutants."""
