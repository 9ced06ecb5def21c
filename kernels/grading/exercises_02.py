"""Exercises of lesson 02: graders, reference solutions and mutants."""
