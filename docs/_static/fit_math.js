// A display equation that cannot break where wrap.css lets it (a split or
// cases block is one table) and is still wider than the column is scaled down
// to fit, to no less than 70 % of its size; narrower than that it scrolls.
(function () {
  const smallest = 0.7;

  function fit() {
    for (const math of document.querySelectorAll('mjx-container[jax="CHTML"][display="true"]')) {
      if (!math.dataset.fontSize) math.dataset.fontSize = math.style.fontSize || "100%";
      math.style.fontSize = math.dataset.fontSize;
      const room = math.clientWidth;
      const needed = math.scrollWidth;
      if (needed > room) {
        const scale = Math.max(smallest, room / needed);
        math.style.fontSize = `calc(${math.dataset.fontSize} * ${scale.toFixed(3)})`;
      }
    }
  }

  window.addEventListener("load", () => {
    if (!window.MathJax || !MathJax.startup) return;
    MathJax.startup.promise.then(() => {
      fit();
      let pending = null;
      window.addEventListener("resize", () => {
        clearTimeout(pending);
        pending = setTimeout(fit, 100);
      });
    });
  });
})();
