"""``python -m shiftlens.zoo.organisms {train,table}`` (see :func:`shiftlens.zoo.organisms.main`)."""

from shiftlens.zoo.organisms.build import main

main()
