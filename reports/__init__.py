"""Reports: figures and one offline HTML page drawn from a run's saved tables and CSVs.

Never imports torch. Entry point: ``reports.build.build_report(run_dir)``.
"""
