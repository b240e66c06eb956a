"""What a person reads: the run report's tables and pages, plots rendered as pictures, the offline plots template.
"""
