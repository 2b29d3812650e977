"""The wake-up measurement's readings (`loadtests.wakeups`): /proc's formats and the table."""

from __future__ import annotations

from loadtests.machine import cpu_ticks
from loadtests.wakeups import Round, interrupt_counts, markdown

INTERRUPTS = """\
            CPU0       CPU1
   0:         46          0   IO-APIC   2-edge      timer
 NMI:          0          0   Non-maskable interrupts
 RES:    4101373    3961242   Rescheduling interrupts
 CAL:    1234567     765433   Function call interrupts
 TLB:      12345      23456   TLB shootdowns
"""


def test_interrupts_are_summed_over_the_cpus() -> None:
    assert interrupt_counts(INTERRUPTS) == {"RES": 8062615, "CAL": 2000000}


def test_cpu_ticks_survive_a_process_name_with_spaces_and_parentheses() -> None:
    stat = ("4242 (nginx: worker (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
            "1234 567 0 0 20 0 1 0 100 1000 200")
    assert cpu_ticks(stat) == (1234, 567)


def test_the_table_shows_medians_per_target_in_order() -> None:
    rounds = [Round("b", 10.0, 1.0, 2.0, 0.1, 0.2, 0.0),
              Round("a", 5.0, 3.0, 4.0, 0.3, 0.4, None),
              Round("b", 30.0, 3.0, 4.0, 0.3, 0.4, 20.0),
              Round("b", 20.0, 2.0, 3.0, 0.2, 0.3, 10.0)]
    table = markdown(rounds).splitlines()
    assert table[2] == "| b | 20 | 2.00 | 3.00 | 0.200 | 0.300 | 10 |"
    assert table[3] == "| a | 5 | 3.00 | 4.00 | 0.300 | 0.400 | - |"
