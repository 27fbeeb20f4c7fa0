//! Document lines and totals following EN 16931: line nets are rounded to the currency's minor
//! unit, the document discount is spread over the VAT rate groups, and VAT is computed once per
//! group, so every total adds up exactly.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::{check_percent, check_scale, round_money, Currency};
use super::DomainError;

/// A line or document discount: a percentage of the gross, or a fixed amount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discount {
    /// Percent number: `10` is 10%.
    Percent(#[serde(with = "rust_decimal::serde::str")] Decimal),
    /// Fixed amount in the document currency.
    Amount(#[serde(with = "rust_decimal::serde::str")] Decimal),
}

/// A line as entered, before its net is computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineInput {
    /// Product or service description.
    pub description: String,
    /// Quantity, greater than zero; may be fractional.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Price per unit; may carry more decimals than the currency.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Optional line discount.
    pub discount: Option<Discount>,
    /// VAT rate as a percent number.
    #[serde(with = "rust_decimal::serde::str")]
    pub tax_rate: Decimal,
}

/// A validated line with its rounded net amount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentLine {
    /// 1-based position on the document.
    pub line_no: u32,
    /// Product or service description.
    pub description: String,
    /// Quantity.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Price per unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Optional line discount.
    pub discount: Option<Discount>,
    /// VAT rate as a percent number.
    #[serde(with = "rust_decimal::serde::str")]
    pub tax_rate: Decimal,
    /// `quantity * unit_price - discount`, rounded to the currency's minor unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub net: Decimal,
}

/// VAT breakdown for one rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaxGroup {
    /// VAT rate as a percent number.
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    /// Sum of the group's line nets minus its share of the document discount.
    #[serde(with = "rust_decimal::serde::str")]
    pub base: Decimal,
    /// `round(base * rate / 100)`.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// Document totals; all amounts at the currency's scale and adding up exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Sum of the line nets.
    #[serde(with = "rust_decimal::serde::str")]
    pub lines_net: Decimal,
    /// Document discount as an amount.
    #[serde(with = "rust_decimal::serde::str")]
    pub document_discount: Decimal,
    /// `lines_net - document_discount`, equal to the sum of the group bases.
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    /// One group per VAT rate, by ascending rate.
    pub taxes: Vec<TaxGroup>,
    /// Sum of the group VAT amounts.
    #[serde(with = "rust_decimal::serde::str")]
    pub tax_total: Decimal,
    /// `subtotal + tax_total`.
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

impl From<&DocumentLine> for LineInput {
    fn from(line: &DocumentLine) -> Self {
        LineInput {
            description: line.description.clone(),
            quantity: line.quantity,
            unit_price: line.unit_price,
            discount: line.discount.clone(),
            tax_rate: line.tax_rate,
        }
    }
}

/// Validates the lines and computes their nets and the document totals.
///
/// Errors name the field at fault as `lines[i].field` (0-based `i`) or `document_discount`.
pub fn compute(
    lines: &[LineInput],
    document_discount: Option<&Discount>,
    currency: &Currency,
) -> Result<(Vec<DocumentLine>, Totals), DomainError> {
    if lines.is_empty() {
        return Err(DomainError::invalid(
            "lines",
            "at least one line is required",
        ));
    }
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let net = line_net(i, line, currency)?;
        let line_no =
            u32::try_from(i + 1).map_err(|_| DomainError::invalid("lines", "too many lines"))?;
        out.push(DocumentLine {
            line_no,
            description: line.description.trim().to_string(),
            quantity: line.quantity,
            unit_price: line.unit_price,
            discount: line.discount.clone(),
            tax_rate: line.tax_rate,
            net,
        });
    }

    let mut lines_net = round_money(Decimal::ZERO, currency);
    let mut group_nets: BTreeMap<Decimal, Decimal> = BTreeMap::new();
    for line in &out {
        lines_net = add(lines_net, line.net, "lines")?;
        let group = group_nets.entry(line.tax_rate.normalize()).or_default();
        *group = add(*group, line.net, "lines")?;
    }

    let discount = document_discount_amount(document_discount, lines_net, currency)?;
    let shares = spread(
        discount,
        &group_nets.values().copied().collect::<Vec<_>>(),
        currency,
    )?;

    let mut taxes = Vec::with_capacity(group_nets.len());
    let mut tax_total = round_money(Decimal::ZERO, currency);
    for ((rate, net), share) in group_nets.into_iter().zip(shares) {
        let base = round_money(net - share, currency);
        let amount = base
            .checked_mul(rate)
            .map(|v| round_money(v / Decimal::ONE_HUNDRED, currency))
            .ok_or_else(|| DomainError::invalid("lines", "amounts are too large"))?;
        tax_total = add(tax_total, amount, "lines")?;
        taxes.push(TaxGroup { rate, base, amount });
    }
    let subtotal = round_money(lines_net - discount, currency);
    let total = add(subtotal, tax_total, "lines")?;
    Ok((
        out,
        Totals {
            lines_net,
            document_discount: discount,
            subtotal,
            taxes,
            tax_total,
            total,
        },
    ))
}

fn add(a: Decimal, b: Decimal, field: &str) -> Result<Decimal, DomainError> {
    a.checked_add(b)
        .ok_or_else(|| DomainError::invalid(field, "amounts are too large"))
}

fn line_net(i: usize, line: &LineInput, currency: &Currency) -> Result<Decimal, DomainError> {
    let field = |name: &str| format!("lines[{i}].{name}");
    if line.description.trim().is_empty() {
        return Err(DomainError::invalid(
            field("description"),
            "must not be empty",
        ));
    }
    if line.quantity <= Decimal::ZERO {
        return Err(DomainError::invalid(
            field("quantity"),
            "must be greater than zero",
        ));
    }
    if line.unit_price < Decimal::ZERO {
        return Err(DomainError::invalid(
            field("unit_price"),
            "must not be negative",
        ));
    }
    check_percent(&field("tax_rate"), line.tax_rate)?;
    let gross = line.quantity.checked_mul(line.unit_price).ok_or_else(|| {
        DomainError::invalid(field("quantity"), "quantity times unit price is too large")
    })?;
    let discount = match &line.discount {
        None => Decimal::ZERO,
        Some(Discount::Percent(percent)) => {
            check_percent(&field("discount"), *percent)?;
            gross
                .checked_mul(*percent)
                .map(|v| v / Decimal::ONE_HUNDRED)
                .ok_or_else(|| DomainError::invalid(field("discount"), "too large"))?
        }
        Some(Discount::Amount(amount)) => {
            if *amount < Decimal::ZERO {
                return Err(DomainError::invalid(
                    field("discount"),
                    "must not be negative",
                ));
            }
            check_scale(&field("discount"), *amount, currency)?;
            if *amount > gross {
                return Err(DomainError::invalid(
                    field("discount"),
                    format!(
                        "{amount} exceeds the line amount {}",
                        round_money(gross, currency)
                    ),
                ));
            }
            *amount
        }
    };
    Ok(round_money(gross - discount, currency))
}

fn document_discount_amount(
    discount: Option<&Discount>,
    lines_net: Decimal,
    currency: &Currency,
) -> Result<Decimal, DomainError> {
    const FIELD: &str = "document_discount";
    let amount = match discount {
        None => Decimal::ZERO,
        Some(Discount::Percent(percent)) => {
            check_percent(FIELD, *percent)?;
            lines_net
                .checked_mul(*percent)
                .map(|v| v / Decimal::ONE_HUNDRED)
                .ok_or_else(|| DomainError::invalid(FIELD, "too large"))?
        }
        Some(Discount::Amount(amount)) => {
            if *amount < Decimal::ZERO {
                return Err(DomainError::invalid(FIELD, "must not be negative"));
            }
            check_scale(FIELD, *amount, currency)?;
            if *amount > lines_net {
                return Err(DomainError::invalid(
                    FIELD,
                    format!("{amount} exceeds the sum of the lines {lines_net}"),
                ));
            }
            *amount
        }
    };
    Ok(round_money(amount, currency))
}

/// Splits `total` over `weights` pro rata, in minor units, so the parts add up to `total` exactly.
///
/// Largest-remainder apportionment: each part is its exact share rounded down or up, so no part
/// exceeds its weight (a group base never goes negative), and the leftover units go to the parts
/// with the largest remainders (ties to the earlier part).
pub(crate) fn spread(
    total: Decimal,
    weights: &[Decimal],
    currency: &Currency,
) -> Result<Vec<Decimal>, DomainError> {
    let zero = round_money(Decimal::ZERO, currency);
    let sum: Decimal = weights
        .iter()
        .try_fold(Decimal::ZERO, |acc, w| acc.checked_add(*w))
        .ok_or_else(|| DomainError::invalid("lines", "amounts are too large"))?;
    if total.is_zero() || sum.is_zero() || weights.is_empty() {
        return Ok(vec![zero; weights.len()]);
    }
    let unit = Decimal::new(1, currency.minor_units());
    let mut parts = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let mut allotted = Decimal::ZERO;
    for (i, weight) in weights.iter().enumerate() {
        let exact = total
            .checked_mul(*weight)
            .and_then(|v| v.checked_div(sum))
            .ok_or_else(|| DomainError::invalid("document_discount", "too large"))?;
        let mut floor = exact.round_dp_with_strategy(
            currency.minor_units(),
            rust_decimal::RoundingStrategy::ToZero,
        );
        floor.rescale(currency.minor_units());
        allotted += floor;
        remainders.push((exact - floor, i));
        parts.push(floor);
    }
    // Stable sort keeps ties in document order, so the result is deterministic.
    remainders.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut left = total - allotted;
    for (_, i) in remainders {
        if left < unit {
            break;
        }
        parts[i] += unit;
        left -= unit;
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"))
    }

    fn line(quantity: Decimal, unit_price: Decimal, tax_rate: Decimal) -> LineInput {
        LineInput {
            description: "Widget".into(),
            quantity,
            unit_price,
            discount: None,
            tax_rate,
        }
    }

    fn totals(lines: &[LineInput], discount: Option<&Discount>) -> Totals {
        match compute(lines, discount, &eur()) {
            Ok((_, totals)) => totals,
            Err(e) => panic!("compute failed: {e}"),
        }
    }

    #[test]
    fn line_nets_are_rounded_before_summing() {
        let lines = vec![line(dec!(1), dec!(33.335), dec!(0)); 3];
        let t = totals(&lines, None);
        assert_eq!(t.total.to_string(), "100.02");
        assert_eq!(t.lines_net.to_string(), "100.02");
        // One line of 3 x 33.335 rounds once: 100.005 -> 100.01.
        let t = totals(&[line(dec!(3), dec!(33.335), dec!(0))], None);
        assert_eq!(t.total.to_string(), "100.01");
    }

    #[test]
    fn document_discount_is_spread_over_rate_groups_and_vat_computed_per_group() {
        let lines = [
            line(dec!(1), dec!(100.00), dec!(20)),
            line(dec!(2), dec!(50.00), dec!(10)),
        ];
        let t = totals(&lines, Some(&Discount::Percent(dec!(10))));
        assert_eq!(t.lines_net, dec!(200.00));
        assert_eq!(t.document_discount.to_string(), "20.00");
        assert_eq!(t.subtotal.to_string(), "180.00");
        let groups: Vec<(String, String, String)> = t
            .taxes
            .iter()
            .map(|g| (g.rate.to_string(), g.base.to_string(), g.amount.to_string()))
            .collect();
        assert_eq!(
            groups,
            [
                ("10".into(), "90.00".into(), "9.00".into()),
                ("20".into(), "90.00".into(), "18.00".into())
            ]
        );
        assert_eq!(t.tax_total.to_string(), "27.00");
        assert_eq!(t.total.to_string(), "207.00");
    }

    #[test]
    fn vat_is_computed_once_per_rate_group_not_per_line() {
        // Per line, 0.05 * 21% = 0.0105 rounds to 0.01 each (0.03); per group 0.15 * 21% = 0.0315 -> 0.03.
        // With 0.07: per line 0.0147 -> 0.01 each (0.03), per group 0.21 * 21% = 0.0441 -> 0.04.
        let lines = vec![line(dec!(1), dec!(0.07), dec!(21)); 3];
        let t = totals(&lines, None);
        assert_eq!(t.tax_total.to_string(), "0.04");
        assert_eq!(t.taxes.len(), 1);
    }

    #[test]
    fn rates_written_differently_share_one_group() {
        let lines = [
            line(dec!(1), dec!(10), dec!(20)),
            line(dec!(1), dec!(10), dec!(20.00)),
        ];
        assert_eq!(totals(&lines, None).taxes.len(), 1);
    }

    #[test]
    fn line_discounts_apply_before_rounding() {
        let mut percent = line(dec!(3), dec!(10.00), dec!(0));
        percent.discount = Some(Discount::Percent(dec!(33.3333)));
        let mut amount = line(dec!(2), dec!(10.00), dec!(0));
        amount.discount = Some(Discount::Amount(dec!(5.50)));
        let t = totals(&[percent, amount], None);
        // 30 - 9.99999 = 20.00001 -> 20.00; 20 - 5.50 = 14.50.
        assert_eq!(t.lines_net.to_string(), "34.50");
    }

    #[test]
    fn amount_document_discount_splits_with_largest_remainder() {
        let lines = [
            line(dec!(1), dec!(10.00), dec!(0)),
            line(dec!(1), dec!(10.00), dec!(10)),
            line(dec!(1), dec!(10.00), dec!(20)),
        ];
        let t = totals(&lines, Some(&Discount::Amount(dec!(0.10))));
        let bases: Vec<String> = t.taxes.iter().map(|g| g.base.to_string()).collect();
        assert_eq!(bases, ["9.96", "9.97", "9.97"]);
        assert_eq!(t.subtotal.to_string(), "29.90");
    }

    #[test]
    fn invalid_lines_are_rejected_naming_the_field() {
        fn check(edit: fn(&mut LineInput), discount: Option<Discount>, field: &str) {
            let mut bad = line(dec!(2), dec!(10.00), dec!(20));
            edit(&mut bad);
            let lines = [line(dec!(1), dec!(1), dec!(0)), bad];
            match compute(&lines, discount.as_ref(), &eur()) {
                Err(DomainError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
        check(
            |l| l.description = "  ".into(),
            None,
            "lines[1].description",
        );
        check(|l| l.quantity = dec!(0), None, "lines[1].quantity");
        check(|l| l.quantity = dec!(-1), None, "lines[1].quantity");
        check(|l| l.unit_price = dec!(-0.01), None, "lines[1].unit_price");
        check(|l| l.tax_rate = dec!(101), None, "lines[1].tax_rate");
        check(|l| l.tax_rate = dec!(-1), None, "lines[1].tax_rate");
        check(
            |l| l.discount = Some(Discount::Percent(dec!(100.5))),
            None,
            "lines[1].discount",
        );
        check(
            |l| l.discount = Some(Discount::Amount(dec!(20.01))),
            None,
            "lines[1].discount",
        );
        check(
            |l| l.discount = Some(Discount::Amount(dec!(-1))),
            None,
            "lines[1].discount",
        );
        check(
            |l| l.discount = Some(Discount::Amount(dec!(0.001))),
            None,
            "lines[1].discount",
        );
        check(|l| l.quantity = Decimal::MAX, None, "lines[1].quantity");
        check(
            |_| {},
            Some(Discount::Amount(dec!(21.01))),
            "document_discount",
        );
        check(
            |_| {},
            Some(Discount::Percent(dec!(-5))),
            "document_discount",
        );
        assert_eq!(
            compute(&[], None, &eur()).err(),
            Some(DomainError::invalid(
                "lines",
                "at least one line is required"
            ))
        );
    }

    #[test]
    fn full_discounts_are_allowed() {
        let mut free = line(dec!(2), dec!(10.00), dec!(20));
        free.discount = Some(Discount::Amount(dec!(20.00)));
        assert_eq!(totals(&[free], None).total.to_string(), "0.00");
        let t = totals(
            &[line(dec!(1), dec!(9.99), dec!(20))],
            Some(&Discount::Percent(dec!(100))),
        );
        assert_eq!(t.total.to_string(), "0.00");
    }

    #[test]
    fn discount_serializes_as_tagged_string() {
        let check = |d: Discount, json: &str| {
            assert_eq!(serde_json::to_string(&d).ok().as_deref(), Some(json));
            assert_eq!(serde_json::from_str::<Discount>(json).ok(), Some(d));
        };
        check(Discount::Percent(dec!(10)), r#"{"percent":"10"}"#);
        check(Discount::Amount(dec!(5.00)), r#"{"amount":"5.00"}"#);
    }

    #[test]
    fn totals_use_the_currency_scale() {
        let jpy = Currency::parse("JPY").unwrap_or_else(|e| panic!("{e}"));
        let kwd = Currency::parse("KWD").unwrap_or_else(|e| panic!("{e}"));
        let lines = [line(dec!(1), dec!(2.5), dec!(10))];
        let t = compute(&lines, None, &jpy).map(|(_, t)| t.total.to_string());
        assert_eq!(t.ok().as_deref(), Some("3"));
        let t = compute(&lines, None, &kwd).map(|(_, t)| t.total.to_string());
        assert_eq!(t.ok().as_deref(), Some("2.750"));
    }

    fn arb_line() -> impl Strategy<Value = LineInput> {
        let rates = vec![
            dec!(0),
            dec!(5),
            dec!(7),
            dec!(10),
            dec!(19),
            dec!(20),
            dec!(21),
            dec!(25.5),
        ];
        (
            1i64..=100_000,
            0i64..=10_000_000,
            0u8..3,
            0i64..=10_000,
            prop::sample::select(rates),
        )
            .prop_map(|(q, p, kind, fraction, tax_rate)| {
                let quantity = Decimal::new(q, 3);
                let unit_price = Decimal::new(p, 3);
                let share = Decimal::new(fraction, 4);
                let discount = match kind {
                    0 => None,
                    1 => Some(Discount::Percent(share * Decimal::ONE_HUNDRED)),
                    // Truncated to cents so the amount never exceeds the gross.
                    _ => Some(Discount::Amount(
                        (quantity * unit_price * share).trunc_with_scale(2),
                    )),
                };
                LineInput {
                    description: "item".into(),
                    quantity,
                    unit_price,
                    discount,
                    tax_rate,
                }
            })
    }

    proptest! {
        #[test]
        fn totals_always_add_up(
            lines in prop::collection::vec(arb_line(), 1..8),
            discount_percent in 0i64..=10_000,
            discount_fraction in 0i64..=100,
            use_amount in any::<bool>(),
        ) {
            let currency = eur();
            let (_, plain) = compute(&lines, None, &currency).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let discount = if use_amount {
                Discount::Amount(round_money(plain.lines_net * Decimal::new(discount_fraction, 2), &currency))
            } else {
                Discount::Percent(Decimal::new(discount_percent, 2))
            };
            let (doc_lines, t) = compute(&lines, Some(&discount), &currency).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let sum_nets: Decimal = doc_lines.iter().map(|l| l.net).sum();
            let sum_bases: Decimal = t.taxes.iter().map(|g| g.base).sum();
            let sum_taxes: Decimal = t.taxes.iter().map(|g| g.amount).sum();
            prop_assert_eq!(sum_nets, t.lines_net);
            prop_assert_eq!(t.lines_net - t.document_discount, t.subtotal);
            prop_assert_eq!(sum_bases, t.subtotal);
            prop_assert_eq!(sum_taxes, t.tax_total);
            prop_assert_eq!(t.subtotal + t.tax_total, t.total);
            prop_assert!(t.taxes.iter().all(|g| g.base >= Decimal::ZERO && g.amount >= Decimal::ZERO));
            for amount in [t.lines_net, t.document_discount, t.subtotal, t.tax_total, t.total] {
                prop_assert_eq!(amount.scale(), 2);
            }
            for g in &t.taxes {
                prop_assert_eq!((g.base.scale(), g.amount.scale()), (2, 2));
            }
        }
    }
}
