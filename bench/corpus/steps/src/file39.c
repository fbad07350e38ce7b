/* Generated source 39 of the steps context. */
int f39(int x) { return x * 39 + 1; }
