"""Renderings of results for people: Rich tables (:mod:`.table`) and matplotlib figures
(:mod:`.plot`). Only this package and the CLI import Rich or matplotlib."""
