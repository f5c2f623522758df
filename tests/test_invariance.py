"""Table 1 of the LN paper measured on our layers, as properties that hold for any random draw."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from conftest import REPO_ROOT
from conftest import load_config
from ln_jax.analysis import invariance
from ln_jax.errors import UserError

# Fixed shapes keep the compiled operations cached across examples; the seed varies the data,
# the parameters and every factor and shift of the transformations.
PROPERTY_SETTINGS = settings(max_examples=6, deadline=None, derandomize=True)


@pytest.fixture(scope='module')
def config():
  return load_config('configs/pi_mnist.py')


def _check_row(norm, deviations, invariant_below, changed_above):
  for name, expected in zip(invariance.TRANSFORMS, invariance.EXPECTED[norm]):
    if expected:
      assert deviations[name] <= invariant_below, (norm, name, deviations[name])
    else:
      assert deviations[name] >= changed_above, (norm, name, deviations[name])


def _table_rows(markdown):
  return '\n'.join(line for line in markdown.splitlines() if line.startswith('|'))


@pytest.mark.parametrize('norm', sorted(invariance.EXPECTED))
@PROPERTY_SETTINGS
@given(seed=st.integers(0, 2**31 - 1), input_scale=st.floats(1e-2, 1e2))
def test_invariances_hold_exactly_without_epsilon(config, norm, seed, input_scale):
  deviations = invariance.measure(config, norm, seed=seed, input_scale=input_scale)
  _check_row(norm, deviations, invariant_below=1e-10, changed_above=1e-2)


@pytest.mark.parametrize('norm', ['batch', 'layer', 'rms', 'group'])
@PROPERTY_SETTINGS
@given(seed=st.integers(0, 2**31 - 1), input_scale=st.floats(1e3, 1e4))
def test_invariances_hold_with_epsilon_far_below_the_activations(config, norm, seed,
                                                                 input_scale):
  # Variances of order 1e4..1e8 against eps = 1e-5: eps shifts the output by about eps / var.
  deviations = invariance.measure(config, norm, seed=seed, epsilon=1e-5, input_scale=input_scale)
  _check_row(norm, deviations, invariant_below=1e-7, changed_above=1e-2)


def test_epsilon_comparable_to_the_activations_breaks_the_invariances(config):
  deviations = invariance.measure(config, 'layer', epsilon=1.0, input_scale=1e-1)
  assert deviations['weight_matrix_rescaling'] > 1e-2
  assert deviations['single_case_rescaling'] > 1e-2


def test_table_agrees_with_the_papers_in_every_cell(config):
  table = invariance.measure_table(config)
  assert [row['norm'] for row in table['rows']][:3] == ['batch', 'weight', 'layer']
  assert {row['norm'] for row in table['rows']} >= set(invariance.EXPECTED)
  assert table['cells_compared'] == len(invariance.EXPECTED) * len(invariance.TRANSFORMS)
  assert table['cells_disagreeing'] == 0
  markdown = invariance.to_markdown(table)
  assert '✗' not in _table_rows(markdown)
  assert f'All {table["cells_compared"]} compared cells agree.' in markdown
  layer_row = markdown.splitlines()[4]
  assert layer_row.startswith('| Layer norm') and layer_row.count('Invariant') == 4


def test_disagreements_are_marked(config):
  # A threshold above every deviation calls all cells Invariant: the paper's "No" cells differ.
  table = invariance.measure_table(config, ['layer', 'rms'], threshold=1e3)
  expected_no = sum(not v for n in ('layer', 'rms') for v in invariance.EXPECTED[n])
  assert table['cells_disagreeing'] == expected_no
  markdown = invariance.to_markdown(table)
  assert _table_rows(markdown).count('✗') == expected_no
  assert f'{expected_no} of 12 compared cells disagree' in markdown


@pytest.mark.parametrize('kwargs, message', [
    (dict(norm_names=['instance']), 'unknown norm instance'),
    (dict(epsilon=-1.0), 'epsilon=-1.0 must be >= 0'),
    (dict(dtype='float16'), "dtype 'float16' is not supported"),
    (dict(threshold=0.0), 'threshold=0.0 must be > 0'),
])
def test_bad_settings_are_one_clear_error(config, kwargs, message):
  with pytest.raises(UserError, match=message):
    invariance.measure_table(config, **kwargs)


def test_unwritable_output_dir_is_a_user_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(UserError, match='choose another --output_dir'):
    invariance.prepare_output_dir(str(blocker / 'table'))


def test_script_prints_and_writes_the_table(tmp_path):
  output_dir = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, 'scripts/invariance.py', '--norms=rms,none', '--dtype=float32',
       f'--output_dir={output_dir}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '| RMS norm' in result.stdout and 'All 12 compared cells agree.' in result.stdout
  assert (output_dir / 'invariance.md').read_text(encoding='utf-8') == result.stdout
  table = json.loads((output_dir / 'invariance.json').read_text())
  assert [row['norm'] for row in table['rows']] == ['rms', 'none']
  assert table['settings']['dtype'] == 'float32'
  assert sorted(os.listdir(output_dir)) == ['invariance.json', 'invariance.md']


def test_script_reports_bad_input_in_one_line_and_writes_nothing(tmp_path):
  output_dir = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, 'scripts/invariance.py', '--norms=instance', f'--output_dir={output_dir}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith('error: unknown norm instance; choose')
  assert 'Traceback' not in result.stderr
  assert not output_dir.exists()
