"""The dead-letter guide's UDF (README, "Dead letters you can act on"): an
order whose item price is not a number is kept with that price unknown
(the column is NULLABLE), and test orders are dropped."""

import decimal


def fix(order):
  if order.get('order_id', '').startswith('TEST-'):
    return None  # dropped, counted
  for item in order.get('items') or []:
    price = item.get('price')
    if isinstance(price, str):
      try:
        decimal.Decimal(price)
      except decimal.InvalidOperation:
        item['price'] = None  # "a lot" is not a price
  return order
