"""`python -m mhsa.tables`: the old spelling of `python -m mhsa tables` (mhsa.study.tables)."""

if __name__ == "__main__":
    from mhsa.study.tables import main

    raise SystemExit(main())
