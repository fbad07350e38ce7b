/* Generated source 33 of the steps context. */
int f33(int x) { return x * 33 + 1; }
