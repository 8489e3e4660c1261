"""`python -m mhsa.diagnostic_plots`: the old spelling of `python -m mhsa diagnostic-plots`
(mhsa.study.diagnostic_plots)."""

if __name__ == "__main__":
    from mhsa.study.diagnostic_plots import main

    raise SystemExit(main())
