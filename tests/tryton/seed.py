#!/usr/bin/python3
"""Seed a template Tryton 6.0 database for the e2e tests of the `tryton` connector.

Usage: /usr/bin/python3 tests/tryton/seed.py DIR

Creates DIR/settled.sqlite (SQLite, database name `settled`, user `admin`, password `admin`) with the modules
`account_invoice` and its dependencies activated, and seeds: a company (EUR), a chart of accounts, a fiscal year
covering today with monthly periods and an invoice sequence numbered `TRY-0001`, ..., customer taxes of 21 %,
10 % and 0 % (named `VAT 21`, `VAT 10`, `VAT 0`), a payment method `Bank` (used by the pay wizard), a payment term
`Direct`, and a customer party `Seeded Customer`. The harness copies DIR/settled.sqlite per test and starts
`trytond` on it. Runs with Debian's Python (`apt-get install tryton-server tryton-modules-account-invoice
tryton-proteus`); takes about 10 s.
"""
import datetime
import os
import subprocess
import sys
from decimal import Decimal

DB = "settled"


def main():
    out = os.path.abspath(sys.argv[1])
    os.makedirs(out, exist_ok=True)
    conf = os.path.join(out, "trytond.conf")
    with open(conf, "w") as f:
        f.write("[database]\nuri = sqlite://\npath = %s\n" % out)
    passfile = os.path.join(out, "admin.pass")
    with open(passfile, "w") as f:
        f.write("admin\n")
    db_file = os.path.join(out, DB + ".sqlite")
    if os.path.exists(db_file):
        os.remove(db_file)
    open(db_file, "w").close()
    env = dict(os.environ, TRYTONPASSFILE=passfile)
    subprocess.run(
        ["trytond-admin", "-c", conf, "-d", DB, "--all", "-u", "account_invoice",
         "--activate-dependencies", "--email", "admin@example.com"],
        env=env, check=True, stdin=subprocess.DEVNULL)
    seed(conf)


def seed(conf):
    os.environ["DB_NAME"] = DB  # the tests.tools helpers import only with it set
    from proteus import Model, config
    config.set_trytond(database=DB, config_file=conf)
    from trytond.modules.company.tests.tools import create_company, get_company
    from trytond.modules.currency.tests.tools import get_currency
    from trytond.modules.account.tests.tools import (
        create_fiscalyear, create_chart, get_accounts, create_tax)
    from trytond.modules.account_invoice.tests.tools import set_fiscalyear_invoice_sequences

    create_company(currency=get_currency("EUR"))
    company = get_company()
    fiscalyear = create_fiscalyear(company, today=datetime.date.today())
    fiscalyear = set_fiscalyear_invoice_sequences(fiscalyear)
    fiscalyear.save()
    for seq in (fiscalyear.invoice_sequences[0].out_invoice_sequence,):
        seq.prefix = "TRY-"
        seq.padding = 4
        seq.save()
    fiscalyear.click("create_period")

    create_chart(company)
    accounts = get_accounts(company)
    for rate in ("21", "10", "0"):
        tax = create_tax(Decimal(rate) / 100)
        tax.name = tax.description = "VAT %s" % rate
        tax.save()

    Journal = Model.get("account.journal")
    PaymentMethod = Model.get("account.invoice.payment.method")
    journal_cash, = Journal.find([("type", "=", "cash")])
    method = PaymentMethod(name="Bank", journal=journal_cash,
                           credit_account=accounts["cash"], debit_account=accounts["cash"])
    method.save()

    PaymentTerm = Model.get("account.invoice.payment_term")
    term = PaymentTerm(name="Direct")
    term.lines.new(type="remainder")
    term.save()

    Party = Model.get("party.party")
    party = Party(name="Seeded Customer")
    party.addresses[0].city = "Brussels"
    party.save()


if __name__ == "__main__":
    main()
