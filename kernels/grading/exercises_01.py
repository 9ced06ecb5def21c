"""Exercises of lesson 01: graders, reference solutions and mutants."""
