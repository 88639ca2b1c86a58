// Usage charts (uPlot): a `.chart` element carries its series in data attributes
// (`data-x`: epoch seconds, `data-requests`, `data-tokens`: numbers, comma-separated; or one
// series in `data-values`, named by `data-label`). Each chart has a table next to it with the
// same numbers, so nothing depends on this file.
(function () {
  'use strict';
  if (typeof uPlot === 'undefined') return;
  function nums(s) { return (s || '').split(',').filter(function (v) { return v !== ''; }).map(Number); }
  Array.prototype.forEach.call(document.querySelectorAll('.chart[data-x]'), function (el) {
    var x = nums(el.dataset.x);
    if (!x.length) return;
    var css = getComputedStyle(document.documentElement);
    var fg = css.getPropertyValue('--fg').trim() || '#000';
    var accent = css.getPropertyValue('--accent').trim() || '#06c';
    var ok = css.getPropertyValue('--ok').trim() || '#080';
    var width = Math.max(280, Math.min(el.clientWidth || 600, 900));
    var axis = { stroke: fg, grid: { stroke: 'rgba(128,128,128,.25)' } };
    if (el.dataset.values !== undefined) {
      var label = el.dataset.label || 'Value';
      new uPlot({
        width: width, height: 200,
        series: [{}, { label: label, stroke: accent, width: 2 }],
        axes: [axis, Object.assign({ label: label }, axis)],
      }, [x, nums(el.dataset.values)], el);
      return;
    }
    new uPlot({
      width: width, height: 220,
      series: [{}, { label: 'Requests', stroke: accent, width: 2 }, { label: 'Tokens', stroke: ok, width: 2, scale: 't' }],
      axes: [axis, Object.assign({ label: 'Requests' }, axis), Object.assign({ side: 1, scale: 't', label: 'Tokens' }, axis)],
    }, [x, nums(el.dataset.requests), nums(el.dataset.tokens)], el);
  });
})();
